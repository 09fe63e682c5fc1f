"""The same W1-W4 on Celery (Redis broker and backend), Dask, Ray and DBOS, on demand."""
