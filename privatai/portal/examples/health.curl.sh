curl __ORIGIN__/healthz
curl __ORIGIN__/readyz
