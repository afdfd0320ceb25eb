"""`python -m msctr`: the command line, also what `torchrun -m msctr ...` starts per process."""

from msctr.cli import main

if __name__ == "__main__":
    main()
