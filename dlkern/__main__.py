"""python -m dlkern COMMAND: a small dispatcher, one subcommand per module.

    python -m dlkern bench [--suite all|layers|models|quick] [--op FAMILY] [--json FILE] ...
"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dlkern")
    commands = parser.add_subparsers(dest="command", required=True)

    from dlkern.benchmark import cli as bench

    bench.add_arguments(commands.add_parser("bench", help="benchmark dlkern against torch here",
                                            description=bench.__doc__))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
