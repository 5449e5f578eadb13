"""The command line, ``python -m amoslabel COMMAND``: one module per group of commands, registered in main."""
