"""Django companion app of lanegate.

lanegate (a Go reverse proxy) remembers, per session cookie, what Django
granted about that session and tells Django on later requests, in a signed
header, who the request is for; LanegateMiddleware then sets request.user
without reading django_session. Django stays the authority: it checks the
user on every trusted request and tells lanegate which sessions to forget.

See README.md next to this package.
"""

__version__ = "1.0"
