"""The ``gte-st`` sub-commands: one module per command, each with ``build_parser()`` and ``main(argv) -> int``.

Commands parse options, call the library and print; they may raise. ``gte_st.cli`` owns turning errors into
one-line messages and exit codes.
"""
