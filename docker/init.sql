-- Run once by the postgres:15 image on an empty volume (docker-entrypoint-initdb.d).
-- Creates the proxy's backend role and two tenants: acme (its own database) and
-- globex (its own schema and role in database `shared`). Example passwords: change them
-- here and in compose.yaml together.

CREATE ROLE tenantgate LOGIN PASSWORD 'change-me-backend'
    NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT;

-- database strategy: tenant acme
CREATE DATABASE acme;
REVOKE CONNECT, TEMPORARY ON DATABASE acme FROM PUBLIC;
GRANT CONNECT ON DATABASE acme TO tenantgate;
\connect acme
CREATE TABLE public.items (id serial PRIMARY KEY, name text NOT NULL, secret text);
INSERT INTO public.items (name, secret) VALUES ('acme-alpha', NULL), ('acme-vault', 'CANARY-acme');
ALTER TABLE public.items OWNER TO tenantgate;

-- schema strategy: tenant globex in database shared
\connect postgres
CREATE DATABASE shared;
REVOKE CONNECT, TEMPORARY ON DATABASE shared FROM PUBLIC;
GRANT CONNECT ON DATABASE shared TO tenantgate;
CREATE ROLE globex NOLOGIN;
GRANT globex TO tenantgate;  -- the proxy SET ROLEs to it; NOINHERIT keeps it closed otherwise
\connect shared
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA globex AUTHORIZATION postgres;
REVOKE ALL ON SCHEMA globex FROM PUBLIC;
GRANT USAGE ON SCHEMA globex TO globex;
CREATE TABLE globex.items (id serial PRIMARY KEY, name text NOT NULL, secret text);
INSERT INTO globex.items (name, secret) VALUES ('globex-alpha', NULL), ('globex-vault', 'CANARY-globex');
GRANT SELECT, INSERT, UPDATE, DELETE ON globex.items TO globex;
GRANT USAGE, SELECT ON SEQUENCE globex.items_id_seq TO globex;
