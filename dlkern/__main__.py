"""python -m dlkern COMMAND: a small dispatcher, one subcommand per module.

    python -m dlkern bench [--suite all|layers|models|quick] [--op FAMILY] [--json FILE] ...
    python -m dlkern explain [--model TEXT] [--mode inference|training|both] [--json FILE]
"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dlkern")
    commands = parser.add_subparsers(dest="command", required=True)

    from dlkern.benchmark import cli as bench

    bench.add_arguments(commands.add_parser("bench", help="benchmark dlkern against torch here",
                                            description=bench.__doc__))
    from dlkern.explain import add_arguments as explain_arguments, run_cli as explain

    explain_arguments(commands.add_parser("explain", help="per covered call of the suite's whole "
                                          "models: torch and dlkern ms, the policy's choice"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main(args)
    if args.command == "explain":
        return explain(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
