curl __BASE_URL__/models \
  -H "Authorization: Bearer $PRIVATAI_API_KEY"

curl __BASE_URL__/models/__MODEL__ \
  -H "Authorization: Bearer $PRIVATAI_API_KEY"
