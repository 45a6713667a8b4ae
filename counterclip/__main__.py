"""`python -m counterclip` is the same as the `counterclip` command."""

from counterclip.cli import main

if __name__ == "__main__":
    main()
