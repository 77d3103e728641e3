from edgeshrink.cli import main

main()
