# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_apisix_stream_global_optspecs
    string join \n h/help V/version
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

complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -s h -l help -d 'Print help'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -s V -l version -d 'Print version'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "serve" -d 'Run the proxy, the Admin API, the Control API and metrics until SIGINT/SIGTERM'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "completions" -d 'Print shell completions for SHELL to stdout'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c apisix-stream -n "__fish_apisix_stream_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand serve" -s c -l config -d 'Path of config.yaml (APISIX\'s format)' -r -F
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve completions man help" -f -a "serve" -d 'Run the proxy, the Admin API, the Control API and metrics until SIGINT/SIGTERM'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve completions man help" -f -a "completions" -d 'Print shell completions for SHELL to stdout'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve completions man help" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c apisix-stream -n "__fish_apisix_stream_using_subcommand help; and not __fish_seen_subcommand_from serve completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
