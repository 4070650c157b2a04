curl __BASE_URL__/openapi.json
