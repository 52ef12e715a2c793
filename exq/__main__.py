from exq.cli import main

main()
