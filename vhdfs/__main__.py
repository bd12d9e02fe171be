from vhdfs.cli import run

run()
