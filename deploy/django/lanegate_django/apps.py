import logging
from importlib import import_module

from django.apps import AppConfig, apps
from django.conf import settings
from django.db.models.signals import post_delete

logger = logging.getLogger("lanegate_django")


def session_models():
    """The session models whose deleted rows lanegate must forget."""
    models = []
    if apps.is_installed("django.contrib.sessions"):
        from django.contrib.sessions.models import Session
        models.append(Session)
    # A custom db-backed engine (SessionStore.get_model_class) may use its own model.
    try:
        store = import_module(settings.SESSION_ENGINE).SessionStore
        get_model_class = getattr(store, "get_model_class", None)
        model = get_model_class() if get_model_class is not None else None
    except Exception as e:  # a broken engine fails loudly elsewhere
        logger.debug("no session model from SESSION_ENGINE %r: %s", settings.SESSION_ENGINE, e)
        model = None
    if model is not None and model not in models:
        models.append(model)
    return models


class LanegateConfig(AppConfig):
    name = "lanegate_django"
    verbose_name = "lanegate"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
        from .middleware import session_deleted

        for model in session_models():
            post_delete.connect(session_deleted, sender=model,
                                dispatch_uid="lanegate_django.session_deleted.%s" % model._meta.label)
