"""`python -m tunelab ...` runs the command line (what `torchrun -m tunelab train CONFIG` starts on each rank)."""

from tunelab.cli import main

if __name__ == "__main__":
    main()
