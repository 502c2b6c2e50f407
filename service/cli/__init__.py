"""The `sctir` command, like vLLM's entrypoints/cli: main.py dispatches to one module per subcommand.

main      the parser and the dispatch; exit codes and one-line errors (service.exitcodes)
serve     `sctir serve`: the HTTP service (service.api), refusing to serve beyond loopback without keys
solve     `sctir solve`: one problem, in this process or through a running service's /solve
eval      `sctir eval`: a validation set through the solver (service.evaluation)
train     `sctir train`: a training stage (training/)
demo      `sctir demo`: build the offline demo model (training/)
errors, options, progress, output: what the subcommands share

train and demo are the one place in service/ that imports training/ (tests/test_imports.py checks it).
"""
