from soulsai.cli import main

main()
