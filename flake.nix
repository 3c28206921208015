{
  description = "hyperhive: a swarm of Claude Code agents on one Linux host";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        hyperhive = pkgs.python3Packages.buildPythonApplication {
          pname = "hyperhive";
          version = "0.1.0";
          pyproject = true;
          src = self;
          build-system = [ pkgs.python3Packages.setuptools ];
          dependencies = with pkgs.python3Packages; [
            trio
            attrs
            cattrs
            typer
            hypercorn
            starlette
            mcp
            h11
          ];
          # The agents' config repos are git repositories.
          makeWrapperArgs = [
            "--prefix"
            "PATH"
            ":"
            (pkgs.lib.makeBinPath [ pkgs.git ])
          ];
          # The test suite needs root, containers and the Claude Code CLI: run it with `make test`.
          doCheck = false;
          meta = {
            description = "Run a swarm of Claude Code agents on one Linux host";
            license = pkgs.lib.licenses.mit;
            mainProgram = "hyperhive";
            platforms = pkgs.lib.platforms.linux;
          };
        };
        default = hyperhive;
      });

      overlays.default = final: _prev: {
        hyperhive = self.packages.${final.stdenv.hostPlatform.system}.hyperhive;
      };

      # services.hyperhive, with the package defaulting to this flake's.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          services.hyperhive.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
      nixosModules.hyperhive = self.nixosModules.default;
    };
}
