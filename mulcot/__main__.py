"""``python -m mulcot``: the CLI as a module, for launchers that take one (``torchrun -m mulcot``,
``accelerate launch -m mulcot``)."""

from mulcot.cli import main

if __name__ == "__main__":
    main()
