"""python -m dlkern bench [--op NAME] [--quick] [--json FILE] [--plot FILE]
python -m dlkern explain [--model TEXT] [--mode inference|training|both] [--json FILE]"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dlkern")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark dlkern against torch on this machine")
    from dlkern.benchmark import suites

    bench.add_argument("--op", action="append", choices=sorted(suites()),
                       help="op family to run (repeatable); default: all")
    bench.add_argument("--quick", action="store_true", help="fewer repeats")
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of the speedups")
    bench.add_argument("--no-first-call", action="store_true",
                       help="skip timing a new process's first call")
    explain = sub.add_parser("explain", help="per covered call of the suite's whole models: "
                             "torch ms, dlkern ms, the policy's choice, share of the step")
    from dlkern.explain import add_arguments, run_cli

    add_arguments(explain)
    args = parser.parse_args(argv)
    if args.command == "explain":
        return run_cli(args)
    from dlkern.benchmark import run

    run(args.op, quick=args.quick, json_path=args.json, plot_path=args.plot,
        first_call=not args.no_first_call)
    return 0


if __name__ == "__main__":
    sys.exit(main())
