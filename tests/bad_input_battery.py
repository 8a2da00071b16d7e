"""Bad-input battery: each case is called on torch and on dlkern; both must raise the same type.

Run as a script in a separate process (tests/test_bad_inputs.py does), so a crash of the process
is caught and reported instead of taking the test run down. Prints one JSON line per case.
Each op family keeps its cases in tests/bad_inputs_<family>.py, a function ``cases()`` returning
{name: (torch call, dlkern call)}.
"""
import glob
import importlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def families():
    return sorted(os.path.basename(p)[len("bad_inputs_"):-3]
                  for p in glob.glob(os.path.join(HERE, "bad_inputs_*.py")))


def outcome(fn):
    try:
        fn()
    except Exception as e:  # the type is what is compared
        return type(e).__name__, str(e)
    return None, ""


def main(names):
    sys.path.insert(0, HERE)
    for family in names:
        module = importlib.import_module(f"bad_inputs_{family}")
        for name, (torch_call, dl_call) in module.cases().items():
            t_type, _ = outcome(torch_call)
            d_type, d_msg = outcome(dl_call)
            print(json.dumps(dict(family=family, case=name, torch=t_type, dlkern=d_type, message=d_msg)))
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:] or families())
