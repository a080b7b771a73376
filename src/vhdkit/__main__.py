from vhdkit.cli import main

main()
