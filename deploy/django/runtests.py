#!/usr/bin/python3
"""Run the lanegate_django tests: /usr/bin/python3 deploy/django/runtests.py [-v 2] [labels...]

Works from any directory; exits non-zero when a test fails.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-v", "--verbosity", type=int, default=1, choices=[0, 1, 2, 3])
    parser.add_argument("--failfast", action="store_true")
    parser.add_argument("labels", nargs="*", help="test labels, e.g. tests.test_tokens (default: all)")
    args = parser.parse_args()

    sys.path.insert(0, HERE)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"

    import django
    from django.conf import settings
    from django.test.utils import get_runner

    django.setup()
    runner = get_runner(settings)(verbosity=args.verbosity, failfast=args.failfast, top_level=HERE)
    failures = runner.run_tests(args.labels or [os.path.join(HERE, "tests")])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
