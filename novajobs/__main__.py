from novajobs.cli import main

main()
