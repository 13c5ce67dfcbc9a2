"""Integrations for serverless platforms and web frameworks, each a few lines to wire up.

* :mod:`batchbridge.contrib.aws_lambda` -- EventBridge and SQS handlers for AWS Lambda;
* :mod:`batchbridge.contrib.gcp_functions` -- Pub/Sub push and ``messagePublished`` CloudEvent handlers
  for Google Cloud Functions and Cloud Run;
* :mod:`batchbridge.contrib.azure_functions` -- an Event Hubs trigger handler for Azure Functions;
* :mod:`batchbridge.contrib.fastapi` -- the ``serve`` receiver mounted in a FastAPI/Starlette app.

The names in each module's ``__all__`` are stable API, like ``batchbridge.core.__all__``; none of
these modules needs its platform's SDK. See ``docs/embedding.md``.
"""
