from django.contrib.auth.decorators import login_required
from django.contrib.sessions.models import Session
from django.http import HttpResponse, HttpResponseServerError
from django.urls import include, path


@login_required
def protected(request):
    """The user's id: what a view sees of request.user."""
    return HttpResponse(str(request.user.pk), content_type="text/plain")


def whoami(request):
    """The user's id, or "anonymous"; never redirects."""
    user = request.user
    return HttpResponse(str(user.pk) if user.is_authenticated else "anonymous", content_type="text/plain")


@login_required
def counter(request):
    """Touches request.session: counts this session's visits."""
    request.session["visits"] = request.session.get("visits", 0) + 1
    return HttpResponse(str(request.session["visits"]), content_type="text/plain")


@login_required
def drop_session(request, key):
    """Deletes another session row (as "log out my other devices" would)."""
    Session.objects.filter(session_key=key).delete()
    return HttpResponse("dropped", content_type="text/plain")


@login_required
def boom(request):
    return HttpResponseServerError("boom", content_type="text/plain")


def plain(request):
    """Never looks at request.user nor request.session."""
    return HttpResponse("plain", content_type="text/plain")


def forged_headers(request):
    """A view trying to speak for Django to lanegate."""
    response = HttpResponse("forged", content_type="text/plain")
    response["X-Lanegate-Grant"] = "v1.test.x.y"
    response["X-Lanegate-Revoke"] = "v1.test.x.y"
    return response


urlpatterns = [
    path("accounts/", include("allauth.urls")),
    path("protected/", protected),
    path("whoami/", whoami),
    path("counter/", counter),
    path("drop/<str:key>/", drop_session),
    path("boom/", boom),
    path("plain/", plain),
    path("forged/", forged_headers),
]
