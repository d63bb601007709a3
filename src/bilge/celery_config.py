"""Enable bilge from a Celery app's configuration: ``bilge.celery_config.enable(app)``.

The public name of ``bilge.integrations.celery_config``, kept where users
import it from.
"""

from bilge.integrations.celery_config import enable

__all__ = ["enable"]
