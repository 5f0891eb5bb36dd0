"""``python -m world_model.data``: write a reference-world posed-video dataset."""

from world_model.data.writer import main

if __name__ == "__main__":
    raise SystemExit(main())
