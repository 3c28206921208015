# services.hyperhive: the hyperhive host daemon (`hyperhive run`) as a systemd service.
#
# The daemon runs as root (it starts systemd-nspawn containers). Operators in `adminGroup`
# reach it through the admin socket `<runDir>/host.sock` (mode 0660, group `adminGroup`,
# directory 0751); every agent's socket directory is 0700 (root, and the agent's container
# through its bind mount). See docs/operator-guide.md.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  cfg = config.services.hyperhive;
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optional
    optionals
    types
    ;

  # HOST:PORT as the daemon takes it ([ADDRESS]:PORT for IPv6), or "off".
  dashboardBind =
    if !cfg.dashboard.enable then
      "off"
    else if lib.hasInfix ":" cfg.dashboard.bind then
      "[${cfg.dashboard.bind}]:${toString cfg.dashboard.port}"
    else
      "${cfg.dashboard.bind}:${toString cfg.dashboard.port}";

  runArgs = [
    "run"
    "--state-dir"
    cfg.stateDir
    "--run-dir"
    cfg.runDir
    "--backend"
    cfg.backend
    "--dashboard-bind"
    dashboardBind
  ]
  ++ optionals (cfg.adminGroup != null) [
    "--admin-group"
    cfg.adminGroup
  ]
  ++ optionals (cfg.environmentFile != null) [
    "--env-file"
    cfg.environmentFile
  ]
  ++ optionals (cfg.database != null) [
    "--database"
    cfg.database
  ]
  ++ optionals (cfg.node != null) [
    "--node"
    cfg.node
  ]
  ++ optionals (cfg.agentDefaults.model != null) [
    "--agent-model"
    cfg.agentDefaults.model
  ]
  ++ optionals (cfg.agentDefaults.cpuQuota != null) [
    "--agent-cpu-quota"
    cfg.agentDefaults.cpuQuota
  ]
  ++ optionals (cfg.agentDefaults.memoryMax != null) [
    "--agent-memory-max"
    cfg.agentDefaults.memoryMax
  ]
  ++ cfg.extraArgs;
in
{
  options.services.hyperhive = {
    enable = mkEnableOption "hyperhive, the host daemon of a swarm of Claude Code agents";

    package = mkOption {
      type = types.package;
      default = pkgs.hyperhive;
      defaultText = literalExpression "pkgs.hyperhive";
      description = ''
        The hyperhive package (it provides `hyperhive` and `hyperhive-harness`). The flake's
        `nixosModules.default` sets it to the flake's own package.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/hyperhive";
      description = ''
        State root: broker.sqlite, the dashboard token, each agent's config repos, state
        and credentials. Must be below /var/lib (it is the unit's StateDirectory, mode 0700).
      '';
    };

    runDir = mkOption {
      type = types.str;
      default = "/run/hyperhive";
      description = ''
        Runtime dir holding host.sock and the agents' sockets. Must be below /run (it is the
        unit's RuntimeDirectory, mode 0751, kept across restarts so agents keep their sockets).
      '';
    };

    dashboard = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Serve the operator dashboard (the login URL: `hyperhive dashboard-url`).";
      };
      bind = mkOption {
        type = types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = "Address the operator dashboard listens on (IPv4 or IPv6).";
      };
      port = mkOption {
        type = types.port;
        default = 7000;
        description = "TCP port of the operator dashboard.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Open `dashboard.port` in the firewall. Only useful with a non-loopback `bind`;
          the dashboard then faces the network, protected by its login token only.
        '';
      };
    };

    adminGroup = mkOption {
      type = types.nullOr types.str;
      default = "hyperhive";
      description = ''
        Group allowed on the admin socket host.sock (operator authority: approve, spawn,
        destroy, answer). The group is created; add operators to it with
        `users.users.<name>.extraGroups`. `null`: root only.
      '';
    };

    backend = mkOption {
      type = types.enum [
        "auto"
        "nspawn"
        "process"
        "external"
      ];
      default = "auto";
      description = ''
        Container backend. `auto` is `nspawn` when systemd-nspawn can run (it is on the
        service's path and the daemon is root), else `process` (no isolation).
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/hyperhive-agents.env";
      description = ''
        The agents' API settings (`hyperhive run --env-file`): `KEY=VALUE` lines with
        `ANTHROPIC_API_KEY` or `ANTHROPIC_AUTH_TOKEN`, `ANTHROPIC_BASE_URL`, proxy variables.
        A path as a string, outside the Nix store (the store is world-readable): a secret
        managed by agenix, sops-nix or by hand, mode 0600, owned by root.
      '';
    };

    database = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "postgresql:///hyperhive?host=/run/postgresql";
      description = ''
        The broker's store (`hyperhive run --database`): a `postgresql://` or `postgres://`
        URL. `null`: `broker.sqlite` in the state dir. It ends up on the daemon's command
        line, so it must hold no password: use peer authentication over the unix socket
        (as in the example), or put `HYPERHIVE_DATABASE=<URL with password>` in
        `environmentFile` instead. See docs/postgresql.md.
      '';
    };

    node = mkOption {
      type = types.nullOr (types.strMatching "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?");
      default = null;
      example = "gpu-1";
      description = ''
        This daemon's node name (`hyperhive run --node`) among the daemons sharing one
        PostgreSQL `database`: the agents placed on it are the ones it runs. `null`: the
        host name. Give each host its own, and keep it: agents stay placed on a name.
        See docs/multi-node.md.
      '';
    };

    agentDefaults = {
      model = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sonnet";
        description = "Model of a new agent's seeded agent.toml. `null`: the built-in default (haiku).";
      };
      cpuQuota = mkOption {
        type = types.nullOr (types.strMatching "[0-9]+%");
        default = null;
        example = "100%";
        description = "`cpu_quota` of a new agent's seeded agent.toml. `null`: the built-in default (200%).";
      };
      memoryMax = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "8G";
        description = "`memory_max` of a new agent's seeded agent.toml. `null`: the built-in default (4G).";
      };
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--log-level"
        "debug"
      ];
      description = "More arguments for `hyperhive run`.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.stateDir;
        message = "services.hyperhive.stateDir must be below /var/lib (it is a StateDirectory).";
      }
      {
        assertion = lib.hasPrefix "/run/" cfg.runDir;
        message = "services.hyperhive.runDir must be below /run (it is a RuntimeDirectory).";
      }
      {
        assertion =
          cfg.environmentFile == null
          || (lib.hasPrefix "/" cfg.environmentFile && !lib.hasPrefix "/nix/store/" cfg.environmentFile);
        message = "services.hyperhive.environmentFile must be an absolute path outside the Nix store (it holds API keys).";
      }
      {
        assertion = cfg.database == null || builtins.match "[^:]+://[^/@:]*:[^/@]*@.*" cfg.database == null;
        message = "services.hyperhive.database must hold no password (it is on the command line and in the Nix store): set HYPERHIVE_DATABASE in environmentFile instead.";
      }
    ];

    warnings =
      optional
        (
          cfg.dashboard.openFirewall
          && builtins.elem cfg.dashboard.bind [
            "127.0.0.1"
            "::1"
            "localhost"
          ]
        )
        "services.hyperhive.dashboard.openFirewall is set but the dashboard only listens on ${cfg.dashboard.bind}.";

    users.groups = mkIf (cfg.adminGroup != null) { ${cfg.adminGroup} = { }; };

    # The admin CLI for operators, pointed at this daemon's runtime dir.
    environment.systemPackages = [ cfg.package ];
    environment.variables.HYPERHIVE_RUN_DIR = cfg.runDir;

    networking.firewall.allowedTCPPorts = mkIf (cfg.dashboard.enable && cfg.dashboard.openFirewall) [
      cfg.dashboard.port
    ];

    systemd.services.hyperhive = {
      description = "hyperhive host daemon (a swarm of Claude Code agents)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      # systemd-nspawn for the containers, git for the agents' config repos.
      path = [
        config.systemd.package
        pkgs.git
      ];
      startLimitIntervalSec = 600;
      startLimitBurst = 5;
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/hyperhive ${utils.escapeSystemdExecArgs runArgs}";
        # The daemon pings every WatchdogSec/2, each ping after a round trip through its
        # database writer; a wedged daemon is restarted.
        WatchdogSec = "30s";
        TimeoutStartSec = "60s";
        # SIGTERM: the daemon stops within 10 s; only the daemon, never the agents.
        TimeoutStopSec = "20s";
        KillMode = "process";
        Restart = "on-failure";
        RestartSec = "5s";
        RuntimeDirectory = lib.removePrefix "/run/" cfg.runDir;
        RuntimeDirectoryMode = "0751";
        RuntimeDirectoryPreserve = "yes";
        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0700";
        LimitNOFILE = 65536;
      };
    };
  };
}
