from dj_orchestrate.cli import main

main()
