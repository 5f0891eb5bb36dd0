"""``python -m world_model.train``: see :mod:`world_model.train`."""

from world_model.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
