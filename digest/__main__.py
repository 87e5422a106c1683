from digest.cli.main import run

run()
