"""python -m dlkern bench [--op NAME] [--quick] [--json FILE] [--plot FILE]"""
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
    args = parser.parse_args(argv)
    from dlkern.benchmark import run

    run(args.op, quick=args.quick, json_path=args.json, plot_path=args.plot,
        first_call=not args.no_first_call)
    return 0


if __name__ == "__main__":
    sys.exit(main())
