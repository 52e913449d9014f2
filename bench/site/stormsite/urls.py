from django.conf import settings
from django.urls import include, path

from projects import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("allauth.urls")),
    path("", include("projects.urls")),
]

if settings.COUNT_QUERIES:
    from stormsite import querycount

    urlpatterns.append(path("_stats/queries", querycount.stats))
