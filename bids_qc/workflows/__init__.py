"""nipype workflow builders (``init_*_wf``)."""
