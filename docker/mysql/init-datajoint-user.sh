# Sourced by the mysql image's entrypoint on the first start (an empty data directory),
# after it has created MYSQL_USER (our DJ_USER). DataJoint creates and drops a schema per
# pipeline (and dj-orchestrate its ledger schema), so the user needs privileges on every
# schema, not only on MYSQL_DATABASE.
docker_process_sql --database=mysql <<-EOSQL
	GRANT ALL PRIVILEGES ON *.* TO '${MYSQL_USER}'@'%';
	FLUSH PRIVILEGES;
EOSQL
