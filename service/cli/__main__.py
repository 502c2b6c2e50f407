"""`python -m service.cli`: the same as `sctir`.

service.cli.main runs as the main module rather than being imported from here: multiprocessing's
spawned children (vLLM's engine core) re-run the parent's main module, which registers their hooks
(service.cli.main), but they never re-run a package's __main__.
"""

import runpy

runpy.run_module("service.cli.main", run_name="__main__", alter_sys=True)
