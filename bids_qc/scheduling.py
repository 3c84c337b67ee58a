"""nipype scheduling for bids_qc: MultiProc and Linear that finish images one after another.

Small subclasses of nipype's MultiProc and Linear plugins (the MultiProc one relies on the
plugin's job tables, tested against nipype 1.8-1.11 by ``tests/test_interrupt.py``), and a
way to stop MultiProc's workers when a run is interrupted.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from typing import Any

from .errors import Terminated

#: Times a MultiProc job may be lost with a dead worker's pool before it fails.
MAX_LOSSES = 3

#: nipype's execution plugins (``<name>Plugin`` in ``nipype.pipeline.plugins``), listed here
#: so that the command line can check ``--plugin-config`` before nipype is imported
#: (``tests/test_cli.py`` checks the list against the installed nipype).
NIPYPE_PLUGINS = (
    "MultiProc", "Linear", "SLURM", "SLURMGraph", "SGE", "SGEGraph", "PBS", "PBSGraph",
    "LSF", "OAR", "Condor", "CondorDAGMan", "IPython", "SomaFlow", "Debug", "LegacyMultiProc",
)


def make_plugin(name: str, args: dict[str, Any], log_level: str = "WARNING") -> Any:
    """The nipype plugin object (so that an interrupted run can stop its workers).

    MultiProc gets :func:`_image_first_multiproc`'s job order, and workers that log at
    ``log_level`` (nipype's ``workflow_level``/``interface_level``); other plugins are
    nipype's.
    """
    from nipype.pipeline import plugins

    if name == "MultiProc":
        plugin = _image_first_multiproc()(plugin_args=args)
        plugin.worker_log_level = log_level
        return plugin
    if name == "Linear":
        return _image_first_linear()(plugin_args=args)
    klass = getattr(plugins, f"{name}Plugin", None)
    return name if klass is None else klass(plugin_args=args)


def _worker_init(cwd: str, log_level: str) -> None:
    """Start a MultiProc worker as nipype does, with the run's nipype log level.

    Workers start from a fresh interpreter (forkserver) whose nipype logs at INFO: without
    this, every node's set-up and finish lines reach the terminal whatever ``-q``/``-v`` say.
    """
    from nipype.pipeline.plugins.multiproc import process_initializer

    process_initializer(cwd)
    set_nipype_log_level(log_level)


def set_nipype_log_level(level: str) -> None:
    """nipype's workflow and interface loggers at ``level`` in this process (utils: WARNING)."""
    from nipype import config
    from nipype import logging as nlogging

    config.set("logging", "workflow_level", level)
    config.set("logging", "interface_level", level)
    config.set("logging", "utils_level", "WARNING")
    nlogging.update_logging(config)


def _image_first_multiproc() -> type:
    """nipype's MultiProc, submitting ready jobs image by image.

    nipype orders jobs by one topological sort of the whole graph, so every image's
    first node runs before any image's last: no participant JSON is written until
    nearly all the work is done, and an interrupted run keeps nothing. Ordering by
    connected component (one per image; nipype's ``depth_first`` sort) lets each
    image's later nodes go before other images' first ones, so images finish, and
    are kept, one after another.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from nipype.pipeline.engine.utils import topological_sort
    from nipype.pipeline.plugins import MultiProcPlugin

    class ImageFirstMultiProcPlugin(MultiProcPlugin):
        """Also survives a worker that dies (killed, out of memory).

        nipype's MultiProc then stops: the process pool is broken, the dead job's
        result never comes and every later submission fails. Here a fresh pool takes
        the next jobs, and the jobs the broken pool lost are run again, one at a time:
        the dead worker's neighbours were only unlucky. A job fails as a crashed node
        (its image gets a JSON saying why, the workflow goes on) when its worker dies
        while it is the only job being run again, or after :data:`MAX_LOSSES` losses.
        """

        def __init__(self, plugin_args: dict[str, Any] | None = None) -> None:
            super().__init__(plugin_args=plugin_args)
            self._jobs: dict[int, tuple[Any, bool]] = {}  # taskid -> (node, updatehash)
            self._losses: dict[int, int] = {}
            self._lost: deque[int] = deque()  # lost jobs waiting to run again, in order
            self._retrying: int | None = None  # the lost job now running again

        def _generate_dependency_list(self, graph: Any) -> None:
            super()._generate_dependency_list(graph)
            order, _ = topological_sort(graph, depth_first=True)
            where = {node: i for i, node in enumerate(self.procs)}
            perm = [where[node] for node in order]
            self.procs = order
            self.depidx = self.depidx[perm, :][:, perm]
            self.refidx = self.refidx[perm, :][:, perm]

        def _async_callback(self, args: Any) -> None:
            # Runs in the pool's management thread; the main loop reads what it records.
            try:
                super()._async_callback(args)
            except BaseException as exc:  # the job's worker died: its future failed
                for taskid, future in list(self._task_obj.items()):
                    if future is args:
                        self._lost_job(taskid, exc)
            else:
                if self._retrying is not None and self._task_obj.get(self._retrying) is args:
                    self._retrying = None

        def _lost_job(self, taskid: int, exc: BaseException) -> None:
            losses = self._losses.get(taskid, 0) + 1
            self._losses[taskid] = losses
            if taskid == self._retrying or losses >= MAX_LOSSES:
                if taskid == self._retrying:
                    self._retrying = None
                self._taskresult[taskid] = {
                    "taskid": taskid, "result": None,
                    "traceback": [f"{type(exc).__name__}: ...\nRuntimeError: the "
                                  "worker process running this node ended abruptly "
                                  "(killed, or out of memory?)\n"],
                }  # fmt: skip
            else:
                self._lost.append(taskid)

        def _get_result(self, taskid: int) -> Any:
            if taskid in self._lost:
                if self._retrying is None and self._lost[0] == taskid:
                    self._lost.popleft()
                    self._retrying = taskid
                    self._resubmit(taskid)
                return None
            return super()._get_result(taskid)

        def _resubmit(self, taskid: int) -> None:
            from nipype.pipeline.plugins.multiproc import run_node

            if getattr(self.pool, "_broken", False):
                self._new_pool()
            node, updatehash = self._jobs[taskid]
            future = self.pool.submit(run_node, node, updatehash, taskid)
            self._task_obj[taskid] = future
            future.add_done_callback(self._async_callback)

        worker_log_level = "WARNING"
        _pool_level: str | None = None

        def _new_pool(self) -> None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = ProcessPoolExecutor(
                max_workers=self.processors, initializer=_worker_init,
                initargs=(self._cwd, self.worker_log_level),
                mp_context=mp.get_context(self.plugin_args.get("mp_context")),
            )
            self._pool_level = self.worker_log_level

        def _submit_job(self, node: Any, updatehash: bool = False) -> int:
            # nipype's own pool (made in __init__, no process started yet) is replaced by
            # one whose workers take the run's log level; a broken pool is replaced too.
            if self._pool_level is None or getattr(self.pool, "_broken", False):
                self._new_pool()
            taskid = super()._submit_job(node, updatehash=updatehash)
            self._jobs[taskid] = (node, updatehash)
            return taskid

        def _clear_task(self, taskid: int) -> None:
            super()._clear_task(taskid)
            self._jobs.pop(taskid, None)

    return ImageFirstMultiProcPlugin


def _image_first_linear() -> type:
    """nipype's Linear plugin, running one image's nodes after another.

    nipype runs the nodes of one topological sort of the whole graph: every image's first
    node before any image's last, so an interrupted serial run kept no result at all.
    """
    import networkx as nx
    from nipype.pipeline.plugins import LinearPlugin
    from nipype.pipeline.plugins.base import str2bool

    class ImageFirstLinearPlugin(LinearPlugin):
        """Runs each connected component (one per image) in turn, as nipype's Linear.

        Nodes run in this process, and nipype turns an interrupt raised inside a node into
        that node's crash and goes on; the signals are noted here, so the run stops.
        """

        def run(self, graph: Any, config: Any, updatehash: bool = False) -> None:
            errors: list[Exception] = []
            stop = str2bool(config["execution"]["stop_on_first_crash"])
            # Components in the order nipype would start them, for a stable image order.
            first = {node: i for i, node in enumerate(nx.topological_sort(graph))}
            components = sorted(nx.weakly_connected_components(graph),
                                key=lambda c: min(first[n] for n in c))  # fmt: skip
            noted: list[int] = []
            restore = _note_signals(noted)
            try:
                for component in components:
                    try:
                        super().run(graph.subgraph(component).copy(), config, updatehash)
                    except RuntimeError as exc:  # some node crashed: the others go on
                        if noted:
                            break
                        errors.append(exc)
                        if stop:
                            break
            finally:
                restore()
            if noted:
                raise Terminated(noted[0]) if noted[0] != signal.SIGINT else KeyboardInterrupt
            if errors:
                raise errors[0]

    return ImageFirstLinearPlugin


def _note_signals(noted: list[int]) -> Any:
    """Append SIGINT/SIGTERM to ``noted`` when they come, then let the handlers act.

    Returns the function that puts the handlers back (nothing is changed outside the
    main thread, where signals cannot be handled).
    """
    previous: dict[int, Any] = {}

    def note(signum: int, frame: Any) -> None:
        handler = previous[signum]
        if handler == signal.SIG_IGN:
            return
        noted.append(signum)
        if callable(handler):
            handler(signum, frame)
        else:  # SIG_DFL
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, note)
    except ValueError:  # not the main thread
        pass

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def stop_workers(plugin: Any) -> None:
    """Cancel queued jobs and end the worker processes of a MultiProc plugin.

    Without this, an interrupted MultiProc run leaves its pool running: the workers
    finish their nodes in a work directory that is being removed, and the interpreter
    waits for them at exit. The workers are killed (SIGKILL: no tracebacks, no nipype
    crash files for nodes that did not fail); one killed mid-write leaves at most a temp
    file, which the runner deletes, as results are written by rename.
    """
    pool = getattr(plugin, "pool", None)
    if pool is None:
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    # nipype's result callbacks would log a BrokenProcessPool traceback per killed job.
    logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL + 1)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.join(timeout=10)
