"""nipype scheduling for bids_qc: MultiProc that finishes images one after another.

A small subclass of nipype's MultiProc plugin (it relies on the plugin's job tables,
tested against nipype 1.8-1.11 by ``tests/test_interrupt.py``), and a way to stop its
workers when a run is interrupted.
"""

from __future__ import annotations

import logging
from typing import Any


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
        result never comes and every later submission fails. Here the jobs the broken
        pool lost fail as crashed nodes (their images get a JSON saying why, the
        workflow goes on) and a fresh pool takes the next jobs.
        """

        def _generate_dependency_list(self, graph: Any) -> None:
            super()._generate_dependency_list(graph)
            order, _ = topological_sort(graph, depth_first=True)
            where = {node: i for i, node in enumerate(self.procs)}
            perm = [where[node] for node in order]
            self.procs = order
            self.depidx = self.depidx[perm, :][:, perm]
            self.refidx = self.refidx[perm, :][:, perm]

        def _async_callback(self, args: Any) -> None:
            try:
                super()._async_callback(args)
            except BaseException as exc:  # the job's worker died: its future failed
                for taskid, future in list(self._task_obj.items()):
                    if future is args:
                        self._taskresult[taskid] = {
                            "taskid": taskid, "result": None,
                            "traceback": [f"{type(exc).__name__}: ...\nRuntimeError: the "
                                          "worker process running this node ended abruptly "
                                          "(killed, or out of memory?)\n"],
                        }

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
            return super()._submit_job(node, updatehash=updatehash)

    return ImageFirstMultiProcPlugin


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
