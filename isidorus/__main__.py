from isidorus.cli import main

main()
