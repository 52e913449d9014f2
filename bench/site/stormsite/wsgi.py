"""WSGI entry point: gunicorn serves stormsite.wsgi:application."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stormsite.settings")

application = get_wsgi_application()
