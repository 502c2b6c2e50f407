"""What tests and benchmarks share: the tiny model, engine doubles, servers, stubs, Docker pools,
scripted solving, the CLI's environment, the fault report.

The dependency goes one way (tests/test_imports.py checks it): product code (service/, sandbox/,
training/) imports neither tests nor bench; tests/support imports only product code and itself;
bench imports from tests only this package; a test module may import bench (to test a bench
tool or compare with its reference implementations) and this package, never another test module.
"""
