"""PyFlink jobs. Each module exposes a pure ``Table -> Table`` function and a thin ``main()``."""
