-- Everything the extension defines in a database, one line per fact, in a
-- stable order: what the upgrade test compares between a database upgraded
-- from an older version and a fresh install. pg_dump cannot do this: it dumps
-- an extension's objects as one CREATE EXTENSION line.
WITH extension_objects AS (
    SELECT classid, objid FROM pg_catalog.pg_depend
     WHERE refclassid = 'pg_catalog.pg_extension'::regclass AND deptype = 'e'
       AND refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'email_accounts')
), relations AS (
    SELECT class.oid, class.relname, class.relkind, class.relacl, class.relrowsecurity, class.relforcerowsecurity,
           class.reloptions
      FROM pg_catalog.pg_class AS class
      JOIN extension_objects ON classid = 'pg_catalog.pg_class'::regclass AND objid = class.oid
)
SELECT fact FROM (
    SELECT format('relation %s kind %s acl %s rls %s/%s options %s comment %s', relname, relkind, relacl, relrowsecurity,
                  relforcerowsecurity, reloptions, pg_catalog.obj_description(oid, 'pg_class')) AS fact FROM relations
    UNION ALL
    SELECT format('column %s.%s %s notnull %s default %s acl %s compression %s comment %s', relations.relname, attribute.attname,
                  pg_catalog.format_type(attribute.atttypid, attribute.atttypmod), attribute.attnotnull,
                  pg_catalog.pg_get_expr(default_value.adbin, default_value.adrelid), attribute.attacl, attribute.attcompression,
                  pg_catalog.col_description(relations.oid, attribute.attnum))
      FROM relations
      JOIN pg_catalog.pg_attribute AS attribute ON attribute.attrelid = relations.oid AND attribute.attnum > 0 AND NOT attribute.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef AS default_value ON default_value.adrelid = relations.oid AND default_value.adnum = attribute.attnum
    UNION ALL
    SELECT format('column order %s: %s', relations.relname,
                  (SELECT string_agg(attname, ', ' ORDER BY attnum) FROM pg_catalog.pg_attribute
                    WHERE attrelid = relations.oid AND attnum > 0 AND NOT attisdropped))
      FROM relations
    UNION ALL
    SELECT format('constraint %s.%s %s', relations.relname, con.conname, pg_catalog.pg_get_constraintdef(con.oid))
      FROM relations JOIN pg_catalog.pg_constraint AS con ON con.conrelid = relations.oid
    UNION ALL
    SELECT format('index %s', pg_catalog.pg_get_indexdef(index.indexrelid))
      FROM relations JOIN pg_catalog.pg_index AS index ON index.indrelid = relations.oid
    UNION ALL
    SELECT format('trigger %s', pg_catalog.pg_get_triggerdef(trigger.oid))
      FROM relations JOIN pg_catalog.pg_trigger AS trigger ON trigger.tgrelid = relations.oid AND NOT trigger.tgisinternal
    UNION ALL
    SELECT format('policy %s.%s %s roles %s using %s check %s', relations.relname, policy.polname, policy.polcmd, policy.polroles,
                  pg_catalog.pg_get_expr(policy.polqual, policy.polrelid), pg_catalog.pg_get_expr(policy.polwithcheck, policy.polrelid))
      FROM relations JOIN pg_catalog.pg_policy AS policy ON policy.polrelid = relations.oid
    UNION ALL
    SELECT format('view %s %s', relations.relname, pg_catalog.pg_get_viewdef(relations.oid))
      FROM relations WHERE relations.relkind = 'v'
    UNION ALL
    SELECT format('function %s acl %s comment %s', pg_catalog.pg_get_functiondef(function.oid), function.proacl,
                  pg_catalog.obj_description(function.oid, 'pg_proc'))
      FROM pg_catalog.pg_proc AS function
      JOIN extension_objects ON classid = 'pg_catalog.pg_proc'::regclass AND objid = function.oid
    UNION ALL
    SELECT format('type %s comment %s', pg_catalog.format_type(type.oid, NULL), pg_catalog.obj_description(type.oid, 'pg_type'))
      FROM pg_catalog.pg_type AS type
      JOIN extension_objects ON classid = 'pg_catalog.pg_type'::regclass AND objid = type.oid
    UNION ALL
    SELECT format('configuration table %s filter %s', config.table_name, config.filter)
      FROM pg_catalog.pg_extension AS extension,
           unnest(extension.extconfig::regclass[]::text[], extension.extcondition) AS config (table_name, filter)
     WHERE extension.extname = 'email_accounts'
    UNION ALL
    SELECT format('schema %s acl %s comment %s', nspname, nspacl, pg_catalog.obj_description(oid, 'pg_namespace'))
      FROM pg_catalog.pg_namespace WHERE nspname = 'email_accounts'
) AS facts
ORDER BY fact;
