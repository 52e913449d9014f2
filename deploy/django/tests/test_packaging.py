"""lanegate_django installs with pip from deploy/django, offline.

The install is the one deploy/django/README.md gives Django developers:
pip with no index and no build isolation, so the build uses the setuptools
and wheel already installed (Debian's python3-setuptools and python3-wheel)
and Django is found among the installed packages. It runs in a virtual
environment that sees the system's site-packages, on a copy of the source,
so that the build's leftovers (build/, *.egg-info) stay out of the tree.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = os.environ.get("TEST_REQUIRE_DJANGO") == "1"
MISSING = [m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m) is None]


def source_modules():
    return sorted(f[:-3] for f in os.listdir(os.path.join(HERE, "lanegate_django")) if f.endswith(".py"))


# Run in the installed environment: the app, its checks and its middleware,
# imported from site-packages and set up in a minimal Django project.
PROBE = r"""
import json, os, sys
import django
from django.conf import settings
settings.configure(
    SECRET_KEY="packaging-test",
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes",
                    "django.contrib.sessions", "lanegate_django"],
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "lanegate_django.middleware.LanegateMiddleware"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    LANEGATE_IDENTITY_SECRET="k1:" + "x" * 32,
)
django.setup()
from django.core import checks
import lanegate_django, lanegate_django.middleware
pkg = os.path.dirname(lanegate_django.__file__)
print(json.dumps({
    "file": lanegate_django.__file__,
    "version": lanegate_django.__version__,
    "modules": sorted(f[:-3] for f in os.listdir(pkg) if f.endswith(".py")),
    "checks": sorted(m.id for m in checks.run_checks() if m.id.startswith("lanegate_django.")),
}))
"""


class PipInstallTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if MISSING:
            msg = "%s lacks %s: python3-pip, python3-setuptools and python3-wheel install it" % (
                sys.executable, ", ".join(MISSING))
            if REQUIRED:
                raise AssertionError(msg + " (TEST_REQUIRE_DJANGO=1)")
            raise unittest.SkipTest(msg)
        cls.tmp = tempfile.mkdtemp(prefix="lanegate-django-pip-")
        src = os.path.join(cls.tmp, "src")
        shutil.copytree(HERE, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        venv = os.path.join(cls.tmp, "venv")
        # --without-pip: the system's pip, seen through the system
        # site-packages, installs into the environment.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv],
                       check=True, capture_output=True)
        cls.python = os.path.join(venv, "bin", "python")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        cls.install = subprocess.run(
            [cls.python, "-m", "pip", "install", "--no-index", "--no-build-isolation", src],
            capture_output=True, text=True, env=env, cwd=cls.tmp)
        cls.site = subprocess.run(
            [cls.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True).stdout.strip()
        cls.probe = None
        if cls.install.returncode == 0:
            # From the temporary directory, so that the repository's own
            # lanegate_django cannot be what is imported.
            cls.probe = subprocess.run([cls.python, "-c", PROBE], capture_output=True, text=True, env=env, cwd=cls.tmp)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "tmp", None):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.assertEqual(self.install.returncode, 0, "pip install failed:\n" + self.install.stdout + self.install.stderr)
        self.assertEqual(self.probe.returncode, 0, "the installed app failed:\n" + self.probe.stderr)
        self.result = json.loads(self.probe.stdout)

    def test_imported_from_the_install(self):
        self.assertTrue(self.result["file"].startswith(self.site + os.sep), self.result["file"])

    def test_every_module_installed(self):
        self.assertEqual(self.result["modules"], source_modules())

    def test_version_is_the_package_version(self):
        import lanegate_django
        self.assertEqual(self.result["version"], lanegate_django.__version__)
        dist = [d for d in os.listdir(self.site) if d.endswith(".dist-info") and d.startswith("lanegate_django-")]
        self.assertEqual(dist, ["lanegate_django-%s.dist-info" % lanegate_django.__version__])
        with open(os.path.join(self.site, dist[0], "METADATA")) as f:
            metadata = f.read()
        self.assertRegex(metadata, r"(?m)^Name: lanegate-django$")
        self.assertTrue(re.search(r"(?m)^Requires-Dist: Django\s*\(?>=3\.2\)?$", metadata), metadata)

    def test_app_checks_pass_when_installed(self):
        self.assertEqual(self.result["checks"], [])

    def test_tests_not_installed(self):
        for name in ("tests", "testdata", "runtests.py"):
            self.assertFalse(os.path.exists(os.path.join(self.site, name)), name)


if __name__ == "__main__":
    unittest.main()
