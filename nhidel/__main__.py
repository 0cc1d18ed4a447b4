from nhidel.cli import run

run()
