from edgeclip.cli import main

main()
