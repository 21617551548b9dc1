from mcushard.cli import main

main()
