# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_apisix_stream_global_optspecs
    string join \n c/config= admin-url= api-key= h/help V/version
end

function __fish_apisix_stream_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_apisix_stream_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_apisix_stream_using_subcommand
    set -l cmd (__fish_apisix_stream_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -s h -l help -d 'Print help'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -s V -l version -d 'Print version'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "serve" -d 'Run the proxy, the Admin API, the Control API and metrics until SIGINT/SIGTERM'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "upgrade" -d 'Replace the running server with the binary at the path it was started from, without refusing a connection'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "route" -d 'Manage stream routes (/apisix/admin/stream_routes)'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "upstream" -d 'Manage upstreams (/apisix/admin/upstreams)'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "service" -d 'Manage services (/apisix/admin/services): an upstream and plugins shared by stream routes'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "ssl" -d 'Manage TLS certificates (/apisix/admin/ssls)'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "top" -d 'Live dashboard of a running server: connections, bytes and rates per route and node'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "completions" -d 'Print shell completions for SHELL to stdout'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "man" -d 'Print the man page (roff) to stdout, or write every page to a directory'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand serve" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand serve" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand serve" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upgrade" -l control-url -d 'Control API address [default: the config\'s apisix.control, else http://127.0.0.1:9090]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upgrade" -l timeout -d 'How long to wait for the new process to take over, e.g. 40s' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upgrade" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upgrade" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upgrade" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upgrade" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -f -a "add" -d 'Create or replace a stream route; prints one line saying so (-o json: the stored route)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -f -a "list" -d 'List stream routes as a table (or -o json), optionally filtered and refreshed'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -f -a "get" -d 'Print one stream route as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -f -a "delete" -d 'Delete a stream route'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -f -a "test" -d 'Show which route a connection would take, and why the others lose'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and not __fish_seen_subcommand_from add list get delete test help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l id -d 'Route id (PUT); without it the server picks one (POST)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l server-addr -d 'Match connections arriving on this local address (IP or CIDR)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l server-port -d 'Match connections arriving on this local port' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l remote-addr -d 'Match clients in this address or network' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l sni -d 'Match TLS connections with this SNI (exact or *.wildcard)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l node -d 'Upstream node (repeatable); IPv6 as [::1]:80; weight defaults to 1' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l type -d 'Load balancing [default: roundrobin]' -r -f -a "roundrobin\t'Weighted round robin'
chash\t'Consistent hashing on --key'
least_conn\t'Fewest active connections'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l key -d 'chash key, e.g. remote_addr' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l scheme -d 'Protocol to the nodes [default: tcp]' -r -f -a "tcp\t'Plain TCP'
udp\t'UDP'
tls\t'TLS over TCP'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l upstream-id -d 'Use a stored upstream instead of inline nodes' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l service-id -d 'Run under this service (its upstream unless the route has one, and its plugins)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l plugin -d 'Plugin configuration (repeatable), e.g. limit-conn=\'{"conn":1,...}\'' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l name -d 'Route name' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l desc -d 'Description' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -s f -l file -d 'The whole route as JSON (- for stdin); the other flags override it' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -s o -l output -d 'What to print: a one-line confirmation (table) or the stored object (json)' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -l name -d 'Only objects whose name matches this regular expression (APISIX\'s `name` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -l label -d 'Only objects that carry this label key (APISIX\'s `label` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -s l -l selector -d 'Only objects whose labels match: KEY=VALUE, KEY!=VALUE or KEY, comma-separated, all must hold' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -l interval -d 'Refresh interval of --watch (e.g. 500ms, 2s)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -s w -l watch -d 'Keep listing, refreshed every --interval, until interrupted'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from get" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from get" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from get" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from delete" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from delete" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from delete" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -l server-port -d 'Local port the connection arrives on' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -l server-addr -d 'Local address the connection arrives on' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -l remote-addr -d 'Client address' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -l sni -d 'TLS SNI the client sends' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -s o -l output -d 'Output format' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from test" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "add" -d 'Create or replace a stream route; prints one line saying so (-o json: the stored route)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "list" -d 'List stream routes as a table (or -o json), optionally filtered and refreshed'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print one stream route as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a stream route'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "test" -d 'Show which route a connection would take, and why the others lose'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -f -a "add" -d 'Create or replace an upstream; prints one line saying so (-o json: the stored upstream)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -f -a "list" -d 'List upstreams as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -f -a "get" -d 'Print one upstream as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -f -a "delete" -d 'Delete an upstream (refused while a stream route uses it, unless --force)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and not __fish_seen_subcommand_from add list get delete help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l id -d 'Upstream id (PUT); without it the server picks one (POST)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l node -d 'Upstream node (repeatable); IPv6 as [::1]:80; weight defaults to 1' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l type -d 'Load balancing [default: roundrobin]' -r -f -a "roundrobin\t'Weighted round robin'
chash\t'Consistent hashing on --key'
least_conn\t'Fewest active connections'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l key -d 'chash key, e.g. remote_addr' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l scheme -d 'Protocol to the nodes [default: tcp]' -r -f -a "tcp\t'Plain TCP'
udp\t'UDP'
tls\t'TLS over TCP'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l retries -d 'Extra tries on other nodes after a failed connect [default: nodes - 1]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l retry-timeout -d 'Seconds allowed for all retries together' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l connect-timeout -d 'Connect timeout in seconds [default: 60]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l send-timeout -d 'Send timeout in seconds [default: 60]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l read-timeout -d 'Read timeout in seconds [default: 60]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l name -d 'Upstream name' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l desc -d 'Description' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -s f -l file -d 'The whole upstream as JSON (- for stdin); the other flags override it' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -s o -l output -d 'What to print: a one-line confirmation (table) or the stored object (json)' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -l name -d 'Only objects whose name matches this regular expression (APISIX\'s `name` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -l label -d 'Only objects that carry this label key (APISIX\'s `label` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -s l -l selector -d 'Only objects whose labels match: KEY=VALUE, KEY!=VALUE or KEY, comma-separated, all must hold' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -l interval -d 'Refresh interval of --watch (e.g. 500ms, 2s)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -s w -l watch -d 'Keep listing, refreshed every --interval, until interrupted'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from get" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from get" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from get" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from delete" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from delete" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from delete" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from delete" -l force -d 'Delete even when stream routes still use it'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from help" -f -a "add" -d 'Create or replace an upstream; prints one line saying so (-o json: the stored upstream)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from help" -f -a "list" -d 'List upstreams as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print one upstream as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete an upstream (refused while a stream route uses it, unless --force)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand upstream; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -f -a "add" -d 'Create or replace a service; prints the stored service'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -f -a "list" -d 'List services as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -f -a "get" -d 'Print one service as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -f -a "delete" -d 'Delete a service (refused while a stream route uses it)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and not __fish_seen_subcommand_from add list get delete help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l id -d 'Service id (PUT); without it the server picks one (POST)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l node -d 'Upstream node (repeatable); IPv6 as [::1]:80; weight defaults to 1' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l type -d 'Load balancing [default: roundrobin]' -r -f -a "roundrobin\t'Weighted round robin'
chash\t'Consistent hashing on --key'
least_conn\t'Fewest active connections'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l key -d 'chash key, e.g. remote_addr' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l scheme -d 'Protocol to the nodes [default: tcp]' -r -f -a "tcp\t'Plain TCP'
udp\t'UDP'
tls\t'TLS over TCP'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l upstream-id -d 'Use a stored upstream instead of inline nodes' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l plugin -d 'Plugin configuration (repeatable), e.g. ip-restriction=\'{"whitelist":["10.0.0.0/8"]}\'' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l name -d 'Service name' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l desc -d 'Description' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -s f -l file -d 'The whole service as JSON (- for stdin); the other flags override it' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -s o -l output -d 'What to print: a one-line confirmation (table) or the stored object (json)' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -l name -d 'Only objects whose name matches this regular expression (APISIX\'s `name` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -l label -d 'Only objects that carry this label key (APISIX\'s `label` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -s l -l selector -d 'Only objects whose labels match: KEY=VALUE, KEY!=VALUE or KEY, comma-separated, all must hold' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -l interval -d 'Refresh interval of --watch (e.g. 500ms, 2s)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -s w -l watch -d 'Keep listing, refreshed every --interval, until interrupted'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from get" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from get" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from get" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from delete" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from delete" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from delete" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "add" -d 'Create or replace a service; prints the stored service'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "list" -d 'List services as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print one service as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a service (refused while a stream route uses it)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -f -a "add" -d 'Upload a certificate and its key; the key is never printed back'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -f -a "list" -d 'List certificates as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -f -a "get" -d 'Print one certificate object as JSON (without its key)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -f -a "delete" -d 'Delete a certificate'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and not __fish_seen_subcommand_from add list get delete help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l cert -d 'Certificate chain (PEM)' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l key -d 'Private key (PEM)' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l sni -d 'Server name (repeatable) [default: the certificate\'s SANs]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l ca -d 'CA (PEM) that client certificates must chain to (turns on mTLS)' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l id -d 'SSL object id (PUT); without it the server picks one (POST)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l desc -d 'Description' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'For people: an aligned table that fits 80 columns, or one line'
json\t'JSON: the objects, each with its id'"
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -l name -d 'Only objects whose name matches this regular expression (APISIX\'s `name` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -l label -d 'Only objects that carry this label key (APISIX\'s `label` list query)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -s l -l selector -d 'Only objects whose labels match: KEY=VALUE, KEY!=VALUE or KEY, comma-separated, all must hold' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -l interval -d 'Refresh interval of --watch (e.g. 500ms, 2s)' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -s w -l watch -d 'Keep listing, refreshed every --interval, until interrupted'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from get" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from get" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from get" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from delete" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from delete" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from delete" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from help" -f -a "add" -d 'Upload a certificate and its key; the key is never printed back'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from help" -f -a "list" -d 'List certificates as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print one certificate object as JSON (without its key)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a certificate'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand ssl; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand top" -l interval -d 'Refresh interval, e.g. 1s, 500ms, 2m' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand top" -l control-url -d 'Control API address [default: the config\'s apisix.control, else http://127.0.0.1:9090]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand top" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand top" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand top" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand top" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand completions" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand completions" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand completions" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand man" -l out-dir -d 'Write all pages into this directory instead of printing the main one' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand man" -s c -l config -d 'config.yaml to use: `serve` runs it; client commands read the admin address and key from it, `top` the control address [default: conf/config.yaml (when it exists)]' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand man" -l admin-url -d 'Admin API address [default: from the config, else http://127.0.0.1:9180]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand man" -l api-key -d 'Admin API key (X-API-KEY) [default: the config\'s first admin key]' -r
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "serve" -d 'Run the proxy, the Admin API, the Control API and metrics until SIGINT/SIGTERM'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "upgrade" -d 'Replace the running server with the binary at the path it was started from, without refusing a connection'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "route" -d 'Manage stream routes (/apisix/admin/stream_routes)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "upstream" -d 'Manage upstreams (/apisix/admin/upstreams)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "service" -d 'Manage services (/apisix/admin/services): an upstream and plugins shared by stream routes'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "ssl" -d 'Manage TLS certificates (/apisix/admin/ssls)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "top" -d 'Live dashboard of a running server: connections, bytes and rates per route and node'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "completions" -d 'Print shell completions for SHELL to stdout'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "man" -d 'Print the man page (roff) to stdout, or write every page to a directory'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve upgrade route upstream service ssl top completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "add" -d 'Create or replace a stream route; prints one line saying so (-o json: the stored route)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "list" -d 'List stream routes as a table (or -o json), optionally filtered and refreshed'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "get" -d 'Print one stream route as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "delete" -d 'Delete a stream route'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "test" -d 'Show which route a connection would take, and why the others lose'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from upstream" -f -a "add" -d 'Create or replace an upstream; prints one line saying so (-o json: the stored upstream)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from upstream" -f -a "list" -d 'List upstreams as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from upstream" -f -a "get" -d 'Print one upstream as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from upstream" -f -a "delete" -d 'Delete an upstream (refused while a stream route uses it, unless --force)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "add" -d 'Create or replace a service; prints the stored service'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "list" -d 'List services as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "get" -d 'Print one service as JSON'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "delete" -d 'Delete a service (refused while a stream route uses it)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from ssl" -f -a "add" -d 'Upload a certificate and its key; the key is never printed back'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from ssl" -f -a "list" -d 'List certificates as a table (or -o json)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from ssl" -f -a "get" -d 'Print one certificate object as JSON (without its key)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and __fish_seen_subcommand_from ssl" -f -a "delete" -d 'Delete a certificate'
