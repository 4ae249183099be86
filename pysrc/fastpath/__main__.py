from fastpath.cli import run

run()
