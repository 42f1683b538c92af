# Sourced by the H200 scripts, on the device: the Vulkan loader carried in .device/gl (the device image
# has NVIDIA's driver but no loader), NVIDIA's ICD, and a runtime directory. Off the device (no
# /usr/local/nvidia) it changes nothing but the runtime directory.
if [ -d /usr/local/nvidia ]; then
  for f in .device/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR=/tmp/xdg && mkdir -p $XDG_RUNTIME_DIR
