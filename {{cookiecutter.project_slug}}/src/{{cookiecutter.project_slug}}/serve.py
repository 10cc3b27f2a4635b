"""Start the service: `python -m {{ cookiecutter.project_slug }}.serve` checks the settings, then becomes Gunicorn.

Gunicorn reads some variables itself before it runs gunicorn.conf.py (`WEB_CONCURRENCY`
must be an integer when its settings module is imported): a wrong value there ends in its
traceback, where the settings would have said in one line what is wrong. Here they are
read first, and a wrong value stops the start with that line. Gunicorn then replaces this
process (same pid: a supervisor's signals reach it), with any arguments given here.
"""

import os
import sys

from .settings import get_settings


def main() -> None:
    settings = get_settings()  # exits with one readable line if the configuration is wrong
    # Gunicorn parses WEB_CONCURRENCY with int(), where the settings also take an empty
    # value as unset: hand it over as they read it (gunicorn.conf.py sets the count).
    if settings.web_concurrency is None:
        os.environ.pop("WEB_CONCURRENCY", None)
    else:
        os.environ["WEB_CONCURRENCY"] = str(settings.web_concurrency)
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", *sys.argv[1:]]
    os.execv(command[0], command)  # noqa: S606 (Gunicorn, with this process's arguments)


if __name__ == "__main__":
    main()
