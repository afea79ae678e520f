"""Minimal Django settings for ``django_views.py``: one app, no database, no middleware (the defaults).

``DEEPSEEK_MAX_WORKERS`` sizes the process-wide pool built by ``DeepSeekConfig.ready()``.
"""

DEBUG = True
SECRET_KEY = "example-only-not-a-secret"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_views"
INSTALLED_APPS = ["django_views.DeepSeekConfig"]
USE_TZ = True
TIME_ZONE = "UTC"

#: Threads making DeepSeek calls for the whole process; calls beyond this wait their turn.
DEEPSEEK_MAX_WORKERS = 32
